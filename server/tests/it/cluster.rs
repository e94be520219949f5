//! Contract §7: several real nodes on one PostgreSQL and one Redis: fan-out across
//! nodes, the registry, presence, and a Redis restart that loses nothing stored.

use std::sync::Arc;
use std::time::Duration;

use herald_shared::ServerFrame;
use herald_shared::health::NodeState;
use serde_json::{Value, json};

use crate::common::{self, ADMIN_TOKEN, API_KEY, Db, Storage, TestServer, start_on};

pub const REDIS: &str = "redis://127.0.0.1:6379";

/// A cluster of nodes sharing a PostgreSQL database and a Redis key prefix of their
/// own; the prefix's keys are deleted when it is dropped.
pub struct Cluster {
    pub nodes: Vec<TestServer>,
    pub storage: Arc<Storage>,
    pub prefix: String,
    pub asgi: String,
    pub redis_url: String,
}

impl Cluster {
    pub async fn start(n: usize) -> Self {
        Self::start_on_redis(n, REDIS).await
    }

    pub async fn start_on_redis(n: usize, redis_url: &str) -> Self {
        let storage = Arc::new(Storage::new(Db::Postgres).await);
        let tag = format!("{:08x}", common::rand_u64() as u32);
        let mut c = Self {
            nodes: Vec::new(),
            storage,
            prefix: format!("htest{tag}"),
            asgi: format!("asgitest{tag}"),
            redis_url: redis_url.to_owned(),
        };
        for _ in 0..n {
            c.add().await;
        }
        c
    }

    /// Starts one more node.
    pub async fn add(&mut self) -> &TestServer {
        self.add_with(&[]).await
    }

    /// Starts one more node with `extra` flags.
    pub async fn add_with(&mut self, extra: &[&str]) -> &TestServer {
        let id = format!("node{}", self.nodes.len());
        let mut args = vec![
            "--redis-url",
            &self.redis_url,
            "--redis-prefix",
            &self.prefix,
            "--channels-prefix",
            &self.asgi,
            "--node-id",
            &id,
        ];
        args.extend_from_slice(extra);
        let s = start_on(self.storage.clone(), &args).await;
        self.nodes.push(s);
        self.nodes.last().unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let (url, pattern) = (self.redis_url.clone(), format!("{{{}}}:*", self.prefix));
        let _ = std::thread::spawn(move || {
            let Ok(client) = redis::Client::open(url) else {
                return;
            };
            let Ok(mut con) = client.get_connection() else {
                return;
            };
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(&pattern)
                .query(&mut con)
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut con);
            }
        })
        .join();
    }
}

/// Waits until every node's broker reports Redis `up` (probe seen).
pub async fn until_ready(nodes: &[TestServer]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for s in nodes {
        loop {
            let r = common::api().get(s.http("/readyz")).send().await.unwrap();
            if r.status() == 200 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node never ready: {:?}",
                r.text().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn event(s: &TestServer, group: &str, payload: Value) {
    let r = common::api()
        .post(s.http(&format!("/api/v1/groups/{group}/events")))
        .bearer_auth(API_KEY)
        .json(&json!({"payload": payload}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

/// A notification published on any node reaches the user's connections on every
/// node exactly once, in id order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_reach_every_node_once() {
    let c = Cluster::start(3).await;
    until_ready(&c.nodes).await;
    assert_fan_out_once(&c).await;
}

/// Publishes nine notifications to user 42 round-robin over three nodes: clients of
/// the user on every node get all nine once, in id order; another user gets none.
pub async fn assert_fan_out_once(c: &Cluster) {
    let mut clients = Vec::new();
    for s in &c.nodes {
        clients.push(s.connect("42").await.0);
    }
    let (mut other, _) = c.nodes[1].connect("43").await;
    let mut sent = Vec::new();
    for i in 0..9 {
        sent.push(c.nodes[i % 3].notify("42", json!({"i": i})).await.id);
    }
    for cl in &mut clients {
        let got: Vec<i64> = cl.notifications(9).await.iter().map(|n| n.id).collect();
        assert_eq!(got, sent);
        cl.silent_for(Duration::from_millis(300)).await;
    }
    other.silent_for(Duration::from_millis(100)).await;
}

/// A group event published on one node reaches subscribers on the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_events_cross_nodes() {
    let c = Cluster::start(3).await;
    until_ready(&c.nodes).await;
    let mut subs = Vec::new();
    for s in &c.nodes[1..] {
        let (mut cl, _) = s.connect_with("7", &["org_5"], None).await;
        cl.send_json(json!({"type": "subscribe", "group": "org_5"}))
            .await;
        assert!(matches!(cl.frame().await, ServerFrame::Subscribed { .. }));
        subs.push(cl);
    }
    event(&c.nodes[0], "org_5", json!({"deploy": 1})).await;
    for cl in &mut subs {
        assert_eq!(
            cl.raw().await,
            json!({"type": "event", "group": "org_5", "payload": {"deploy": 1}})
        );
    }
    // After unsubscribing on one node, only the other still gets events.
    subs[0]
        .send_json(json!({"type": "unsubscribe", "group": "org_5"}))
        .await;
    assert!(matches!(
        subs[0].frame().await,
        ServerFrame::Unsubscribed { .. }
    ));
    event(&c.nodes[2], "org_5", json!(2)).await;
    assert_eq!(subs[1].raw().await["payload"], 2);
    subs[0].silent_for(Duration::from_millis(300)).await;
}

/// An event batch published on one node reaches each group's members on the other
/// nodes, in batch order (the publishes are pipelined on one Redis connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_batches_cross_nodes_in_order() {
    let c = Cluster::start(2).await;
    until_ready(&c.nodes).await;
    let (mut a, _) = c.nodes[1].connect("7").await;
    let (mut b, _) = c.nodes[1].connect("8").await;
    let events: Vec<Value> = (0..200)
        .map(|i| json!({"group": format!("user_{}", 7 + i % 2), "payload": i}))
        .collect();
    let r = common::api()
        .post(c.nodes[0].http("/api/v1/events/batch"))
        .bearer_auth(API_KEY)
        .json(&json!({"events": events}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"accepted": 200}));
    for (cl, first) in [(&mut a, 0), (&mut b, 1)] {
        for i in (first..200).step_by(2) {
            assert_eq!(cl.raw().await["payload"], i);
        }
        cl.silent_for(Duration::from_millis(200)).await;
    }
}

/// The registry lists exactly the live nodes, with their addresses; a stopped node
/// leaves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_lists_the_live_nodes() {
    let mut c = Cluster::start(3).await;
    let client = redis::Client::open(REDIS).unwrap();
    let mut con = redis::aio::ConnectionManager::new(client).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let nodes = loop {
        let nodes = herald_server::list_nodes(&mut con, &c.prefix)
            .await
            .unwrap();
        if nodes.len() == 3 || tokio::time::Instant::now() > deadline {
            break nodes;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, vec!["node0", "node1", "node2"]);
    assert_eq!(nodes[1].public, c.nodes[1].public.to_string());
    assert_eq!(nodes[1].admin, c.nodes[1].admin.to_string());
    assert_eq!(nodes[1].state, NodeState::Serving);
    let stopped = c.nodes.remove(1);
    stopped.stop().await.unwrap();
    let ids: Vec<String> = herald_server::list_nodes(&mut con, &c.prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(ids, vec!["node0", "node2"]);
}

/// Presence counts a user's connections on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_spans_the_cluster() {
    let c = Cluster::start(2).await;
    let (_a, _) = c.nodes[0].connect("42").await;
    let (_b, _) = c.nodes[1].connect("42").await;
    let (_d, _) = c.nodes[1].connect("42").await;
    let presence = |s: &TestServer| {
        let url = s.http("/api/v1/users/42/presence");
        async move {
            common::api()
                .get(url)
                .bearer_auth(API_KEY)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let p = presence(&c.nodes[0]).await;
        if p["connections"] == 3 {
            assert_eq!(p["online"], true);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "presence never reached 3: {p}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(_d);
    loop {
        if presence(&c.nodes[1]).await["connections"] == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "presence never dropped to 2"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Admin status reports Redis `up` in cluster mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_redis() {
    let c = Cluster::start(1).await;
    until_ready(&c.nodes).await;
    let st: Value = common::api()
        .get(c.nodes[0].admin_url("/admin/status"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(st["redis"], "up");
}

/// A redis-server of the test's own, on a free port, that can be killed and
/// restarted on the same port.
struct OwnRedis {
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    fn start() -> Self {
        let port = common::free_port();
        let mut r = Self { port, child: None };
        r.restart();
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (`-STOP`, `-CONT`) to the server: stopped, it still accepts
    /// connections (the kernel completes them) but answers nothing.
    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let st = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill runs");
        assert!(st.success(), "kill {signal} {pid} failed");
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn readyz(s: &TestServer) -> u16 {
    common::api()
        .get(s.http("/readyz"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Redis killed and restarted while notifications flow: readiness turns 503 while it
/// is down, and the client gets every stored notification exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_loses_nothing_stored() {
    let mut redis = OwnRedis::start();
    let c = Cluster::start_on_redis(2, &redis.url()).await;
    until_ready(&c.nodes).await;
    let (mut client, _) = c.nodes[1].connect("42").await;
    let mut sent = Vec::new();
    for i in 0..10 {
        sent.push(c.nodes[0].notify("42", json!(i)).await.id);
    }
    let got: Vec<i64> = client
        .notifications(10)
        .await
        .iter()
        .map(|n| n.id)
        .collect();

    redis.kill();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while readyz(&c.nodes[1]).await != 503 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "readiness stayed 200 with Redis down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Stored while nobody can fan out: 201 all the same.
    for i in 10..20 {
        sent.push(c.nodes[0].notify("42", json!(i)).await.id);
    }
    redis.restart();
    until_ready(&c.nodes).await;
    for i in 20..30 {
        sent.push(c.nodes[0].notify("42", json!(i)).await.id);
    }
    crate::cluster::receive_all(&mut client, got, &sent).await;
}

/// A Redis that stops answering (SIGSTOP) does not freeze connects: the SUBSCRIBE
/// of a new user's group gives up after 2 s and the upgrades complete; once the
/// subscriber is abandoned, later upgrades do not wait on Redis at all. When Redis
/// answers again (SIGCONT) the node resubscribes and its sessions catch up on what
/// was stored meanwhile, then live deliveries work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_does_not_freeze_connects() {
    let redis = OwnRedis::start();
    let c = Cluster::start_on_redis(1, &redis.url()).await;
    until_ready(&c.nodes).await;
    let node = &c.nodes[0];
    let (mut early, _) = node.connect("early").await;

    redis.signal("-STOP");
    let users: Vec<String> = (0..5).map(|i| format!("paused{i}")).collect();
    let upgrades = futures_util::future::join_all(users.iter().map(|u| node.connect(u)));
    let mut clients = tokio::time::timeout(Duration::from_secs(6), upgrades)
        .await
        .expect("upgrades complete within 6 s with Redis paused");
    // The subscriber is abandoned now: an upgrade does not wait on Redis at all.
    tokio::time::timeout(Duration::from_millis(1500), node.connect("late"))
        .await
        .expect("an upgrade after the subscriber was abandoned is quick");
    assert_eq!(readyz(node).await, 503, "Redis is down for this node");
    // Stored while Redis cannot carry it: 201 all the same.
    let stored = node.notify("early", json!("while paused")).await.id;

    redis.signal("-CONT");
    until_ready(&c.nodes).await;
    crate::cluster::receive_all(&mut early, Vec::new(), &[stored]).await;
    let live = node.notify("paused0", json!("live")).await.id;
    crate::cluster::receive_all(&mut clients[0].0, Vec::new(), &[live]).await;
}

/// PROTOCOL.md 7.7: a node's presence hash holds exactly its users (a count that
/// drops to 0 is deleted), an idle node does not rewrite it (a check is one `HLEN`),
/// and a hash changed behind the node's back is rewritten at the next check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_checked_not_rewritten_and_heals_what_it_finds_wrong() {
    let redis = OwnRedis::start();
    let c = Cluster::start_on_redis(1, &redis.url()).await;
    until_ready(&c.nodes).await;
    let node = &c.nodes[0];
    let hash = format!("{{{}}}:presence:{}", c.prefix, node.node_id());
    let mut con = redis_at(&redis.url()).await;
    let (_a, _) = node.connect("pa").await;
    let (_b, _) = node.connect("pb").await;
    drop(node.connect("gone").await.0);
    let fields = async |con: &mut redis::aio::MultiplexedConnection| -> Vec<(String, i64)> {
        let mut f: Vec<(String, i64)> = redis::cmd("HGETALL")
            .arg(&hash)
            .query_async(con)
            .await
            .unwrap();
        f.sort();
        f
    };
    let want = vec![("pa".to_owned(), 1), ("pb".to_owned(), 1)];
    // Within 15 s the hash holds exactly pa and pb, or the test fails saying `what`.
    let until_right = async |con: &mut redis::aio::MultiplexedConnection, what: &str| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while fields(con).await != want {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: {:?}",
                fields(con).await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    until_right(&mut con, "the hash never held exactly pa and pb").await;
    // The first check (within 10 s of start) rewrote the hash once; idle, the next
    // ones only look at it.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let renames = calls(&mut con, "rename").await;
    let checks = calls(&mut con, "hlen").await;
    tokio::time::sleep(Duration::from_secs(21)).await;
    assert_eq!(
        calls(&mut con, "rename").await,
        renames,
        "an idle node rewrote its hash"
    );
    assert!(
        calls(&mut con, "hlen").await >= checks + 2,
        "no checks in 21 s"
    );
    // Behind the node's back: a count gone. The next check rewrites it.
    let _: () = redis::cmd("HDEL")
        .arg(&hash)
        .arg("pb")
        .query_async(&mut con)
        .await
        .unwrap();
    until_right(&mut con, "the hash was never healed").await;
}

/// After Redis restarts empty, presence heals (the node rewrites its counts) and a
/// catch-up replays only what is new, never what the client already had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_heals_presence_and_replays_only_new() {
    let mut redis = OwnRedis::start();
    let c = Cluster::start_on_redis(2, &redis.url()).await;
    until_ready(&c.nodes).await;
    // Three old notifications, all read: the client's initial_state is empty.
    let mut old = Vec::new();
    for i in 0..3 {
        old.push(c.nodes[0].notify("42", json!(i)).await.id);
    }
    let (mut reader, _) = c.nodes[0].connect("42").await;
    reader
        .send_json(json!({"type": "mark_read", "ids": old}))
        .await;
    reader.frame().await;
    drop(reader);
    let (mut client, initial) = c.nodes[1].connect("42").await;
    assert!(initial.is_empty());
    let (_other, _) = c.nodes[0].connect("42").await;
    let presence =
        async || c.nodes[0].api_get("/api/v1/users/42/presence").await["connections"].clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while presence().await != 2 {
        assert!(tokio::time::Instant::now() < deadline, "presence never 2");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    redis.kill();
    redis.restart();
    until_ready(&c.nodes).await;
    let fresh = c.nodes[0].notify("42", json!("new")).await.id;
    match tokio::time::timeout(Duration::from_secs(15), client.frame())
        .await
        .expect("the new one arrives")
    {
        ServerFrame::Notification { notification } => {
            assert_eq!(notification.id, fresh, "old ids replayed")
        }
        other => panic!("unexpected {other:?}"),
    }
    client.silent_for(Duration::from_millis(500)).await;
    // The restarted Redis lost every count; the nodes' full sync restores them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while presence().await != 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "presence never healed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reads the client's notifications after `got` (allowing 15 s between two, for a
/// resync to run) until it has as many as `sent`: they must be exactly `sent`, once
/// and in order, with nothing after them.
pub async fn receive_all(client: &mut crate::common::Client, mut got: Vec<i64>, sent: &[i64]) {
    while got.len() < sent.len() {
        match tokio::time::timeout(Duration::from_secs(15), client.frame()).await {
            Ok(ServerFrame::Notification { notification }) => got.push(notification.id),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => panic!("stalled: got {got:?} of {sent:?}"),
        }
    }
    assert_eq!(got, sent, "every stored notification once, in order");
    client.silent_for(Duration::from_millis(300)).await;
}

/// A command connection to `url`, for a test to look at what the node did there.
async fn redis_at(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The value of `key` in `INFO <section>` (empty if absent).
async fn info(con: &mut redis::aio::MultiplexedConnection, section: &str, key: &str) -> String {
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(con)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// How many times Redis ran `command` (`INFO commandstats`).
async fn calls(con: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    let stats = info(con, "commandstats", &format!("cmdstat_{command}")).await;
    stats
        .split(',')
        .find_map(|kv| kv.strip_prefix("calls="))
        .map_or(0, |n| n.parse().unwrap())
}

/// How many connections Redis accepted so far.
async fn connections_received(con: &mut redis::aio::MultiplexedConnection) -> u64 {
    info(con, "stats", "total_connections_received")
        .await
        .parse()
        .unwrap()
}

async fn pubsub_channels(
    con: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
) -> Vec<String> {
    redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .arg(pattern)
        .query_async(con)
        .await
        .unwrap()
}

/// PROTOCOL.md 7.2: a burst of groups losing their last member (every client of a
/// node hanging up at once) costs a few UNSUBSCRIBEs of many channels, not one per
/// group, and leaves the node subscribed to its probe and resync channels only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_burst_unsubscribes_in_a_few_commands() {
    const USERS: usize = 200;
    let redis = OwnRedis::start();
    let c = Cluster::start_on_redis(1, &redis.url()).await;
    until_ready(&c.nodes).await;
    let mut con = redis_at(&redis.url()).await;
    let mut clients = Vec::new();
    for i in 0..USERS {
        clients.push(c.nodes[0].connect(&format!("burst{i}")).await.0);
    }
    let groups = pubsub_channels(&mut con, &format!("{}:g:*", c.prefix)).await;
    assert_eq!(groups.len(), USERS);
    let before = calls(&mut con, "unsubscribe").await;
    drop(clients);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = pubsub_channels(&mut con, "*").await;
        if left.len() == 2 {
            let mut left = left;
            left.sort();
            assert_eq!(
                left,
                [
                    format!("{}:probe:node0", c.prefix),
                    format!("{}:resync", c.prefix)
                ]
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still subscribed to {} channels",
            left.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent = calls(&mut con, "unsubscribe").await - before;
    assert!(
        (1..=10).contains(&sent),
        "{sent} UNSUBSCRIBEs for {USERS} groups"
    );
}

/// PROTOCOL.md 7.2: a client that leaves and comes back at once (a page reload),
/// whether before, during or after the node's unsubscribe, is subscribed when its
/// connect returns, and so hears what is published next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_racing_a_join_keeps_the_group_subscribed() {
    let c = Cluster::start(1).await;
    until_ready(&c.nodes).await;
    let mut con = redis_at(REDIS).await;
    let channel = format!("{}:g:user_racer", c.prefix);
    for i in 0..14u64 {
        let (old, _) = c.nodes[0].connect("racer").await;
        drop(old);
        // Around the unsubscribe's linger (50 ms), on either side of it.
        tokio::time::sleep(Duration::from_millis(i * 5)).await;
        let (mut client, _) = c.nodes[0].connect("racer").await;
        let n = c.nodes[0].notify("racer", json!(i)).await;
        match tokio::time::timeout(Duration::from_secs(5), client.frame()).await {
            Ok(ServerFrame::Notification { notification }) => assert_eq!(notification.id, n.id),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => panic!("round {i}: the notification never came: unsubscribed under a member"),
        }
        let (_, subscribers): (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&channel)
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(subscribers, 1, "round {i}");
    }
}

/// PROTOCOL.md 7.4: a subscriber whose resubscription Redis refuses (here, an ACL
/// that forbids every channel) retries with backoff, not in a tight loop, and comes
/// back once Redis accepts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_resubscription_backs_off() {
    let redis = OwnRedis::start();
    let c = Cluster::start_on_redis(1, &redis.url()).await;
    until_ready(&c.nodes).await;
    let mut con = redis_at(&redis.url()).await;
    let before = connections_received(&mut con).await;
    // Drops the subscriber (it is subscribed to channels it may no longer hear).
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "default", "resetchannels"][..])
        .query_async(&mut con)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let attempts = connections_received(&mut con).await - before;
    assert_eq!(readyz(&c.nodes[0]).await, 503);
    // 100 ms doubling, each wait at least half: at most 7 attempts in 3 s.
    assert!(
        (2..=8).contains(&attempts),
        "{attempts} subscriber connections in 3 s"
    );
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "default", "allchannels"][..])
        .query_async(&mut con)
        .await
        .unwrap();
    until_ready(&c.nodes).await;
}
